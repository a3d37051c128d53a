"""The microservices: actor, replay, learner, gateway, and the embedded launcher."""
