"""python -m services.learner: one learner process."""
from services.learner.learner import Learner
from shared.service import base_parser, run_service


def main() -> None:
    p = base_parser("Learner: claims pending runs, trains, publishes weights, metrics and checkpoints.")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where run checkpoints are written")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--run", default=None, help="claim only this run id")
    a = p.parse_args()
    learner = Learner(a.nats, a.checkpoint_dir, a.device, a.run)
    run_service(learner.main, a.log_level)


if __name__ == "__main__":
    main()
