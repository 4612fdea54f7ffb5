from vdsmconsole.cli import main

main()
