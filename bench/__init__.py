"""`make bench`: measures the service on this machine, each figure beside its baseline."""
