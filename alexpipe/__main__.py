from alexpipe.cli import main

main()
