"""python -m services.learner: one learner process."""
from services.learner.learner import Learner
from shared.service import base_parser, run_service


def main() -> None:
    p = base_parser("Learner: claims pending runs, trains, publishes weights, metrics and checkpoints.")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="where run checkpoints are written")
    p.add_argument("--devices", default="auto",
                   help="auto (every visible GPU, else CPU) or a list: cuda:0,cuda:1 / cpu,cpu (gloo)")
    p.add_argument("--log-dir", default=None, help="where follower ranks write their logs")
    p.add_argument("--run", default=None, help="claim only this run id")
    a = p.parse_args()
    learner = Learner(a.nats, a.checkpoint_dir, a.devices, a.run, a.log_dir)
    run_service(learner.main, a.log_level)


if __name__ == "__main__":
    main()
