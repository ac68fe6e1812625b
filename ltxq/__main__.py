from ltxq.cli import main

main()
