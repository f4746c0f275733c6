"""A local TF Serving stand-in (REST + gRPC) for exported SavedModels, and its clients.

Submodules import TensorFlow; this package itself imports nothing, so `serving.client`'s REST
client stays light. See serving/server.py and serving/client.py.
"""
