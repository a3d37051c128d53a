"""python -m services.replay: one replay shard."""
from services.replay.replay import ReplayShard
from shared.service import base_parser, run_service


def main() -> None:
    p = base_parser("Replay shard: keeps recent trajectory fragments and serves samples.")
    p.add_argument("--shard", default=None, help="shard name (default: random)")
    a = p.parse_args()
    run_service(ReplayShard(a.nats, a.shard).main, a.log_level)


if __name__ == "__main__":
    main()
