"""Python clients of the moend registry and router (gRPC, proto/moend/v1)."""
import json
import os
import queue
import threading
import time

import grpc

from moend import _proto


class MoendError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, method, code, details):
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


def _call(method, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as e:
        raise MoendError(method, e.code(), e.details()) from None


def budget(*, ratio=None, bytes=None, context=0):  # noqa: A002 - the proto field's name
    """A moend.v1.Budget: a compression ratio (> 1), or total KV cache bytes at
    `context` prefix tokens. Exactly one of ratio and bytes."""
    common = _proto.load("common_pb2")
    if (ratio is None) == (bytes is None):
        raise ValueError("give exactly one of ratio= (a compression ratio > 1) or bytes= "
                         "(total KV cache bytes at context=)")
    if ratio is not None:
        return common.Budget(ratio=float(ratio), context=int(context))
    if context <= 0:
        raise ValueError(f"a bytes budget needs context= (prefix tokens), got {context}")
    return common.Budget(bytes=int(bytes), context=int(context))


def _read_file(what, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read the {what} file {path!r}: {e.strerror}") from None


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds 'authorization: Bearer <token>' to every call (with or without TLS,
    as the moend servers accept it; grpc's call credentials need TLS)."""

    def __init__(self, token):
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)


def _channel(target, *, tls_ca=None, tls_client_cert=None, tls_client_key=None,
             token_file=None):
    """A channel as the moend binaries' --tls-ca, --tls-client-cert,
    --tls-client-key and --auth-token-file flags describe it."""
    if (tls_client_cert is None) != (tls_client_key is None):
        raise ValueError("give both tls_client_cert= and tls_client_key=, or neither")
    if tls_client_cert is not None and tls_ca is None:
        raise ValueError("a client certificate needs tls_ca= (TLS) too")
    if tls_ca is not None:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read_file("TLS CA", tls_ca),
            private_key=_read_file("TLS client key", tls_client_key) if tls_client_key else None,
            certificate_chain=(_read_file("TLS client certificate", tls_client_cert)
                               if tls_client_cert else None))
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    if token_file is not None:
        token = _read_file("auth token", token_file).decode().strip()
        if not token:
            channel.close()
            raise ValueError(f"the auth token file {token_file!r} is empty")
        channel = grpc.intercept_channel(channel, _TokenInterceptor(token))
    return channel


class _Client:
    def __init__(self, target, *, timeout=10.0, channel=None, tls_ca=None, tls_client_cert=None,
                 tls_client_key=None, token_file=None):
        self.target = target
        self.timeout = timeout
        self._own_channel = channel is None
        self._channel = channel if channel is not None else _channel(
            target, tls_ca=tls_ca, tls_client_cert=tls_client_cert,
            tls_client_key=tls_client_key, token_file=token_file)

    def close(self):
        if self._own_channel:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class PlanWatch:
    """A WatchPlans stream: the current plan, then each newer one.

    Iterate it (blocks until the next plan; ends when cancelled or the stream
    ends), or call next_plan(timeout). Errors of the stream (router gone,
    unknown model) raise MoendError from the iteration. cancel() ends it.
    """

    _END = object()

    def __init__(self, call):
        self._call = call
        self._queue = queue.Queue()
        self._cancelled = False
        self._done = False
        self._thread = threading.Thread(target=self._pump, name="moend-watch", daemon=True)
        self._thread.start()

    def _pump(self):
        try:
            for plan in self._call:
                self._queue.put(plan)
            self._queue.put(self._END)
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                self._queue.put(self._END)
            else:
                self._queue.put(MoendError("WatchPlans", e.code(), e.details()))

    def next_plan(self, timeout=None):
        """The next plan; TimeoutError when none arrives within `timeout` s,
        StopIteration when the stream has ended."""
        if self._done:
            raise StopIteration
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no plan within {timeout} s") from None
        if item is self._END:
            self._done = True
            raise StopIteration
        if isinstance(item, MoendError):
            self._done = True
            raise item
        return item

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_plan()

    def cancel(self):
        self._cancelled = True
        self._call.cancel()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


class RouterClient(_Client):
    """Plans from a moend-router.

        with RouterClient("127.0.0.1:7002") as router:
            plan = router.solve_plan("tinycode", ratio=8)
            for plan in router.watch_plans("tinycode", ratio=8): ...
    """

    def __init__(self, target, *, timeout=10.0, channel=None, **security):
        super().__init__(target, timeout=timeout, channel=channel, **security)
        self._stub = _proto.load("router_pb2_grpc").RouterStub(self._channel)
        self._pb = _proto.load("router_pb2")

    def solve_plan(self, model, *, ratio=None, bytes=None, context=0,  # noqa: A002
                   solver="exact", table_version=0, units="", timeout=None):
        """A moend.v1.Plan for `model` under the budget (see budget()).

        units: "" or "auto" (per KV head for greedy/exact when the table has
        per-head rows, else per layer), "layer" or "head". A per-head layer
        of the plan has `heads` (one HeadPlan per KV head) instead of its own
        keep/kbits/vbits."""
        req = self._pb.SolvePlanRequest(model=model, budget=budget(ratio=ratio, bytes=bytes,
                                                                   context=context),
                                        solver=solver, table_version=table_version, units=units)
        return _call("SolvePlan", self._stub.SolvePlan, req, timeout=timeout or self.timeout)

    def watch_plans(self, model, *, ratio=None, bytes=None, context=0,  # noqa: A002
                    solver="exact", units=""):
        """A PlanWatch over the plans for `model` under the budget (units as
        in solve_plan)."""
        req = self._pb.WatchPlansRequest(model=model, budget=budget(ratio=ratio, bytes=bytes,
                                                                    context=context),
                                         solver=solver, units=units)
        return PlanWatch(self._stub.WatchPlans(req))


class RegistryClient(_Client):
    """Models, calibration jobs and sensitivity tables of a moend-registry."""

    def __init__(self, target, *, timeout=10.0, channel=None, **security):
        super().__init__(target, timeout=timeout, channel=channel, **security)
        self._stub = _proto.load("registry_pb2_grpc").RegistryStub(self._channel)
        self._pb = _proto.load("registry_pb2")
        self._common = _proto.load("common_pb2")

    # Models.
    def register_model(self, name, *, config_json=None, model_dir=None):
        """Registers (or re-registers) a model from its config.json text, or
        from the config.json of a Hugging Face model folder."""
        if (config_json is None) == (model_dir is None):
            raise ValueError("give exactly one of config_json= or model_dir=")
        if model_dir is not None:
            with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
                config_json = f.read()
        req = self._pb.RegisterModelRequest(name=name, config_json=config_json)
        return _call("RegisterModel", self._stub.RegisterModel, req, timeout=self.timeout)

    def get_model(self, name):
        return _call("GetModel", self._stub.GetModel, self._pb.GetModelRequest(name=name),
                     timeout=self.timeout)

    def list_models(self):
        return list(_call("ListModels", self._stub.ListModels, self._pb.ListModelsRequest(),
                          timeout=self.timeout).models)

    # Calibration jobs.
    def submit_job(self, model, *, seq_len, num_samples, dataset, compression_point=0,
                   samples_per_shard=0, layers_per_shard=0, tuples=None, job_id=""):
        """Submits a calibration job; returns the CalibrationJob (its
        spec.job_id names it). `dataset` resolves on the workers (relative to
        their --data-dir); `tuples` is a list of (keep, kbits, vbits), None =
        the default 112-tuple grid."""
        spec = self._pb.JobSpec(job_id=job_id, model=model, seq_len=seq_len,
                                compression_point=compression_point, num_samples=num_samples,
                                samples_per_shard=samples_per_shard,
                                layers_per_shard=layers_per_shard, dataset=dataset)
        for keep, kbits, vbits in tuples or []:
            spec.tuples.add(keep=keep, kbits=kbits, vbits=vbits)
        return _call("SubmitJob", self._stub.SubmitJob, self._pb.SubmitJobRequest(spec=spec),
                     timeout=self.timeout)

    def get_job(self, job_id, *, include_shards=False):
        req = self._pb.GetJobRequest(job_id=job_id, include_shards=include_shards)
        return _call("GetJob", self._stub.GetJob, req, timeout=self.timeout)

    def list_jobs(self, model=""):
        return list(_call("ListJobs", self._stub.ListJobs, self._pb.ListJobsRequest(model=model),
                          timeout=self.timeout).jobs)

    def wait_job(self, job_id, *, timeout=3600.0, poll=0.2, on_progress=None):
        """Polls until the job is DONE and returns it. Rides out a restarting
        registry (UNAVAILABLE / DEADLINE_EXCEEDED); TimeoutError after
        `timeout` s names the shards done so far. on_progress(job) is called
        whenever shards_done changes."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                job = self.get_job(job_id)
            except MoendError as e:
                if e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            else:
                if on_progress is not None and job.shards_done != last:
                    on_progress(job)
                last = job.shards_done
                if job.state == self._pb.JOB_STATE_DONE:
                    return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"calibration job {job_id} not done after {timeout} s "
                                   f"({last} shards done); is a moend-worker running?")
            time.sleep(poll)

    def submit_calibration(self, model_dir, *, seq_len, num_samples, dataset, name=None,
                           probes=256, samples_per_shard=1, layers_per_shard=0, wait=True,
                           timeout=3600.0, on_progress=None):
        """RegisterModel + SubmitJob (+ wait): calibrates the model of a
        Hugging Face folder on the registry's workers, which load it from
        their --models folder by `name` (default: the folder's name). With
        wait, returns the DONE job (its table_version is the new table);
        otherwise the submitted job."""
        name = name or os.path.basename(os.path.normpath(model_dir))
        self.register_model(name, model_dir=model_dir)
        if not 0 < probes < seq_len:
            raise ValueError(f"probes must be in (0, seq_len={seq_len}), got {probes}")
        job = self.submit_job(name, seq_len=seq_len, num_samples=num_samples, dataset=dataset,
                              compression_point=seq_len - probes,
                              samples_per_shard=samples_per_shard,
                              layers_per_shard=layers_per_shard)
        if not wait:
            return job
        return self.wait_job(job.spec.job_id, timeout=timeout, on_progress=on_progress)

    # Tables.
    def get_table(self, model, version=0):
        """GetTableResponse (version, run_id, table); version 0 = latest."""
        req = self._pb.GetTableRequest(model=model, version=version)
        return _call("GetTable", self._stub.GetTable, req, timeout=self.timeout)

    def publish_table(self, table):
        """Publishes a SensitivityTable (see table_from_json) as the model's
        next version; returns the version."""
        req = self._pb.PublishTableRequest(table=table)
        return _call("PublishTable", self._stub.PublishTable, req, timeout=self.timeout).version

    def watch_model_versions(self, model="", *, after_version=0, include_tables=False):
        """The registry's change feed: an iterator of ModelVersionEvent; call
        .cancel() on it to stop."""
        req = self._pb.WatchModelVersionsRequest(model=model, after_version=after_version,
                                                 include_tables=include_tables)
        return self._stub.WatchModelVersions(req)


def table_from_json(path_or_dict, *, model=None):
    """A moend.v1.SensitivityTable from the JSON that `moendctl calibrate`
    writes (fields model, num_layers, num_kv_heads, head_dim, seq_len,
    compression_point, samples, tuples [{keep, kbits, vbits}], s [[...]],
    optional s_head [[[...] per KV head] per layer] and signals [strings])."""
    common = _proto.load("common_pb2")
    if isinstance(path_or_dict, dict):
        d = path_or_dict
    else:
        with open(path_or_dict, encoding="utf-8") as f:
            d = json.load(f)
    t = common.SensitivityTable(model=model or d["model"], num_layers=d["num_layers"],
                                num_kv_heads=d["num_kv_heads"], head_dim=d["head_dim"],
                                seq_len=d["seq_len"], compression_point=d["compression_point"],
                                samples=d["samples"])
    for tup in d["tuples"]:
        t.tuples.add(keep=tup["keep"], kbits=tup["kbits"], vbits=tup["vbits"])
    for row in d["s"]:
        t.s.add(s=row)
    for layer in d.get("s_head", []):
        heads = t.s_head.add()
        for row in layer:
            heads.heads.add(s=row)
    t.signals.extend(d.get("signals", []))
    return t
