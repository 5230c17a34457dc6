from lmtune.cli import run

if __name__ == "__main__":  # not when a spawned child process re-imports the main module
    run()
