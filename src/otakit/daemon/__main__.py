from otakit.daemon.main import main

main()
