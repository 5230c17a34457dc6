"""Chat templates in Ollama's Go syntax (deploy/ollama_chat.py): read off the Jinja template
by rendering it, used only where the result reproduces the Jinja output exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import lmtune

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# Mistral's kind: no system role, the start token written by the template itself.
INST = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% elif message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
        "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
SHOUTING = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] | upper }}"
            "\n{% endfor %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}]


def _glue(template: str, bos: str = "<s>", eos: str = "</s>"):
    from transformers.utils.chat_template_utils import render_jinja_template

    from lmtune.deploy.ollama_chat import chat_glue

    def render(messages):
        return render_jinja_template(conversations=[messages], chat_template=template,
                                     add_generation_prompt=True, bos_token=bos,
                                     eos_token=eos)[0][0]

    special = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
               "<|end_header_id|>", bos, eos]
    return chat_glue(render, special, bos), render


@pytest.mark.parametrize("template, end", [(CHATML, "<|im_end|>"), (LLAMA3, "<|eot_id|>"),
                                           (INST, "</s>")])
def test_the_glue_renders_conversations_as_the_jinja_template_does(template, end):
    glue, render = _glue(template)
    assert glue is not None and glue.end_of_turn == end
    for messages in (CONVERSATION, CONVERSATION[1:], CONVERSATION[1:2]):
        if template == INST and messages[0]["role"] == "system":
            assert glue.system is None  # the template refuses it; Ollama's is dropped
            continue
        start = "" if template == CHATML else "<s>"  # llama.cpp writes the start token
        assert start + glue.render(messages) == render(messages)


def test_the_go_template_for_chatml():
    glue, _ = _glue(CHATML)
    assert glue.go_template() == (
        '{{ range $i, $m := .Messages }}{{ if eq $m.Role "system" }}<|im_start|>system\n'
        '{{ $m.Content }}{{ else if eq $m.Role "user" }}{{ if eq $i 0 }}<|im_start|>system\n'
        'You are helpful<|im_end|>\n<|im_start|>user\n{{ else }}<|im_end|>\n<|im_start|>user\n'
        '{{ end }}{{ $m.Content }}{{ else if eq $m.Role "assistant" }}<|im_end|>\n'
        '<|im_start|>assistant\n{{ $m.Content }}{{ end }}{{ end }}<|im_end|>\n'
        '<|im_start|>assistant\n')


def _go_render(template: str, messages: list[dict]) -> str:
    """Ollama's renderer: Go's text/template (.ci/run installs Go)."""
    main = Path(__file__).parent / "go_template" / "main.go"
    done = subprocess.run(["go", "run", str(main)], input=json.dumps(
        {"template": template, "messages": messages}), capture_output=True, text=True,
        timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (.ci/run installs golang-go)")
@pytest.mark.parametrize("template", [CHATML, LLAMA3, INST])
def test_go_itself_renders_the_template_as_jinja_does(template):
    glue, render = _glue(template)
    start = "" if template == CHATML else "<s>"
    for messages in (CONVERSATION, CONVERSATION[1:]):
        if glue.system is None and messages[0]["role"] == "system":
            continue
        assert start + _go_render(glue.go_template(), messages) == render(messages)
    braces = _glue(CHATML.replace("You are helpful", "Use {{ and }} freely"))[0]
    assert "Use {{ and }} freely" in _go_render(braces.go_template(), CONVERSATION[1:2])


def test_a_template_that_changes_the_contents_gets_none():
    assert _glue(SHOUTING)[0] is None


def test_a_chat_models_ollama_folder_speaks_its_chat_template(tmp_path):
    """The default model (not a run): its ChatML template in Go, <|im_end|> as the stop,
    and the start token left to llama.cpp."""
    out = tmp_path / "ollama"
    result = lmtune.export("smollm2-135m", out, format="ollama", type="q8_0")
    text = (out / "Modelfile").read_text()
    assert text.startswith("# the chat template; llama.cpp puts <|im_start|> before every "
                           "prompt itself\nFROM ./model.gguf\n")
    assert 'TEMPLATE """{{ range $i, $m := .Messages }}{{ if eq $m.Role "system" }}system\n' \
        in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert result.gguf.out == out / "model.gguf"
