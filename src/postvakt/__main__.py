from postvakt.cli import main

main()
