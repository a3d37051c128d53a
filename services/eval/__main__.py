"""python -m services.eval CHECKPOINT [--episodes N] [--sampled] [--video out.gif] [--out result.json]"""
from services.eval.evaluate import main

if __name__ == "__main__":
    main()
