"""The generated gRPC code committed in src/caravan/v1 is exactly what grpcio-tools makes of the .proto."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "caravan" / "v1" / "predict.proto"
GENERATED = ("predict_pb2.py", "predict_pb2.pyi", "predict_pb2_grpc.py")


def test_regenerating_the_proto_gives_the_committed_files(tmp_path):
    from grpc_tools import protoc  # in the test extras: a missing grpcio-tools fails this test, never skips it

    # The command written at the top of predict.proto, into a scratch folder.
    code = protoc.main(["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                        f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(PROTO)])
    assert code == 0
    produced = sorted(p.name for p in (tmp_path / "caravan" / "v1").iterdir())
    assert produced == sorted(GENERATED)
    for name in GENERATED:
        fresh = (tmp_path / "caravan" / "v1" / name).read_bytes()
        committed = (ROOT / "src" / "caravan" / "v1" / name).read_bytes()
        assert fresh == committed, f"src/caravan/v1/{name} is stale: regenerate it (see predict.proto)"


def test_the_generated_service_is_the_one_gateways_call():
    from caravan.v1 import predict_pb2, predict_pb2_grpc

    service = predict_pb2.DESCRIPTOR.services_by_name["Predictor"]
    assert service.full_name == "caravan.v1.Predictor"
    method = service.methods_by_name["Predict"]
    assert (method.input_type.name, method.output_type.name) == ("PredictRequest", "PredictReply")
    assert hasattr(predict_pb2_grpc, "PredictorStub") and hasattr(predict_pb2_grpc, "add_PredictorServicer_to_server")
    # A row is parallel lists (see predict.proto): names, one number per name, kinds, texts.
    assert [f.name for f in predict_pb2.Row.DESCRIPTOR.fields] == ["names", "numbers", "kinds", "texts"]
