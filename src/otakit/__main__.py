from otakit.cli.main import main

main()
