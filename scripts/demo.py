"""Entry point of the demo job: ``python scripts/demo.py`` == ``rlhf-pairs demo``."""

from rlhf_pairs.demo import main

if __name__ == "__main__":
    main()
