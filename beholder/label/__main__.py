from beholder.label.cli import main

main()
