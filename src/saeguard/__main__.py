from saeguard.cli import main

main()
