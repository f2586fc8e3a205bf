"""fanflow's services: thin shells around the library (trigger, worker, aggregator)."""
