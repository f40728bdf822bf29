"""The labelled detection corpus: train.py writes data/ and heldout.txt, load.py reads them."""
