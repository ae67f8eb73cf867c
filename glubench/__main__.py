from glubench.train import main

main()
