#!/usr/bin/env python3
"""Reads a TensorBoard log directory with TensorBoard's own loaders and prints its scalars
as JSON, so that a test can compare them with what `trainer` wrote:

    {"file_version": 2.0,   (the version the Python loader parsed from "brain.Event:2";
                             null with --loader rust, which does not report it)
     "scalars": {"loss": [[step, wall_time, value], ...], ...}}

    python benches/read_tensorboard.py [--loader python|rust] RUN_DIR/tensorboard

--loader python (default): `EventAccumulator`, the Python loader.
--loader rust: the data server that `tensorboard --logdir` runs by default (the
  `tensorboard-data-server` package, "rustboard"), queried over gRPC as the web UI's
  backend does. The two differ after a restart: see docs/watching.md.

Every event file in DIR is read (a resumed run adds one), in name order.

Exit status: 0 ok, 2 usage or unreadable directory, 3 tensorboard (or, for --loader rust,
its data server) is not installed."""
import json
import os
import subprocess
import sys
import tempfile


def python_loader(path):
    from tensorboard.backend.event_processing import event_accumulator

    # size_guidance 0 keeps every point; the default samples scalars down to 10000.
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    scalars = {tag: [[e.step, e.wall_time, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    return acc.file_version, scalars


def rust_loader(path, binary):
    import grpc
    from tensorboard import context
    from tensorboard.data import grpc_provider

    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        args = [binary, "--logdir", path, "--reload", "once", "--port", "0", "--port-file", port_file, "--die-after-stdin", "-v"]
        server = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # -v logs "Finished load cycle" once everything on disk is loaded.
            for line in server.stderr:
                if "Finished load cycle" in line:
                    break
            else:
                raise RuntimeError(f"the data server exited with status {server.wait()} before loading {path}")
            with open(port_file) as f:
                addr = f"localhost:{int(f.read())}"
            provider = grpc_provider.GrpcDataProvider(addr, grpc_provider.make_stub(grpc.insecure_channel(addr)))
            ctx = context.RequestContext()
            runs = provider.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=1 << 30)
        finally:
            server.stdin.close()
            server.wait()
    if len(runs) > 1:
        raise RuntimeError(f"{path} holds several runs ({sorted(runs)}); give one run's tensorboard directory")
    tags = next(iter(runs.values()), {})
    return None, {tag: [[d.step, d.wall_time, d.value] for d in data] for tag, data in tags.items()}


def main(argv):
    args = argv[1:]
    loader = "python"
    if len(args) == 3 and args[0] == "--loader" and args[1] in ("python", "rust"):
        loader, args = args[1], args[2:]
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    path = args[0]
    try:
        import tensorboard  # noqa: F401
    except ImportError as e:
        print(f"tensorboard is not installed for {sys.executable}: {e}", file=sys.stderr)
        return 3
    if not os.path.isdir(path):
        print(f"{path}: not a directory", file=sys.stderr)
        return 2
    if loader == "rust":
        try:
            import tensorboard_data_server
        except ImportError as e:
            print(f"tensorboard-data-server is not installed for {sys.executable}: {e}", file=sys.stderr)
            return 3
        binary = tensorboard_data_server.server_binary()
        if binary is None:
            print("tensorboard-data-server has no server binary for this platform", file=sys.stderr)
            return 3
        version, scalars = rust_loader(path, binary)
    else:
        version, scalars = python_loader(path)
    json.dump({"file_version": version, "scalars": scalars}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
