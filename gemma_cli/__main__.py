from gemma_cli.cli import main

main()
