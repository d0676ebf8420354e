"""gRPC service around the router: `router-serve`, server factory, metrics.

Needs the `serve` extra (grpcio, grpcio-health-checking, grpcio-reflection, protobuf, prometheus_client).
"""
