"""Mininet topologies (``mn --custom topologies/star.py --topo star,4``)."""
