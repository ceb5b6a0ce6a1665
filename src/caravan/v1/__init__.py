"""Generated gRPC code for ``proto/caravan/v1/predict.proto`` (the proto package ``caravan.v1`` is this package).

Do not edit the ``predict_pb2*`` files: regenerate them (the command is at the top of the .proto);
tests/unit/test_proto_generated.py fails when they differ from what grpcio-tools gives.
"""
