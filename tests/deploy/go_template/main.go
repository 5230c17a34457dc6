// Renders an Ollama TEMPLATE the way Ollama does (Go's text/template over .Messages, each
// with Role and Content), so the tests check the Go syntax lmtune writes with Go itself.
// Reads {"template": ..., "messages": [{"role": ..., "content": ...}]} on stdin.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("t").Parse(in.Template))
	if err := tmpl.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil {
		panic(err)
	}
}
