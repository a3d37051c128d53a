"""Everything two services must agree on: config, wire format, subjects, networks, losses."""
