"""The data plane both front doors share: the served model, its reloads, decisions and their record.

`router_model/service/` (gRPC) and `router_model/gateway/` (OpenAI HTTP) are adapters over it:
they convert their wire format, call `DataPlane`, and convert back.
"""
