"""python -m services.actor: one actor process."""
from services.actor.actor import Actor
from shared.service import base_parser, run_service


def main() -> None:
    p = base_parser("Actor: steps envs with the latest policy, publishes trajectory fragments.")
    p.add_argument("--index", type=int, default=None,
                   help="a fixed slot, for seeds and names (repeatable runs); default: the registry hands out "
                        "a distinct one to every actor process")
    p.add_argument("--run", default=None, help="serve only this run id (default: whichever is running)")
    p.add_argument("--env-threads", type=int, default=1, help="C++ threads for Atari vector envs")
    a = p.parse_args()
    actor = Actor(a.nats, a.index, a.run, a.env_threads)
    run_service(actor.main, a.log_level)


if __name__ == "__main__":
    main()
