from kilowatch.cli.app import main

main()
