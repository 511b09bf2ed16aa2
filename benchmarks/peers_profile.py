"""Where a training step of our din goes: the input pipeline alone, then the step's parts.

    python -m benchmarks.peers --profile [--data DIR] [--calls 8] [--config configs/din.yaml]

Each part is timed in wall time and in this process's CPU time (user + system, all threads),
median per batch over `calls` calls, the parts taking turns call by call so that a busy spell of
this shared machine falls on all of them. CPU time is what the input pipeline takes away from the
step on a 2-core machine (tf.data runs on the same cores, in parallel to it).

Input pipeline (batches of the train split, as `qrec_tf.train` reads it):
  records      GZIP TFRecords read, interleaved, shuffled and batched (no parsing)
  records_mem  the same serialized records from memory (no GZIP, no file reads)
  parse_all    + parse_example of every schema feature (what `qrec_tf.train` parsed before
               issue 21)
  parse_din    + parse_example of the features din reads (user, item, history, label)
  lookups      + the vocabulary lookups, in tf.data
Step parts, on one parsed batch held in memory (tf.function each):
  lookups, forward (loss terms, training mode), forward + backward (gradients of every
  variable), train_step (+ optimizer, metrics); per layer: the history attention forward
  (training and inference mode: Dice's batch statistics), forward + backward, the CTR MLP,
  the embedding gathers and the mini-batch aware L2. The optimizer is train_step minus
  forward + backward.
The whole step as `fit` runs it on the real input: parsing every feature, and parsing only din's.
An input pipeline keeps working in the background until its prefetch buffers are full: an input
part or a whole step is therefore timed over `BATCHES_PER_CALL` consecutive batches per call
(steady state), and the next part waits `SETTLE_SECONDS` before it starts, so that the refill
is not counted in it (the first batches of a call still come from the filled buffers: the input
parts' times are lower bounds, by up to a few batches in `BATCHES_PER_CALL`).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import tensorflow as tf

from benchmarks import peers, step_flops
from qrec_tf import data
from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.layers.dice import Dice
from qrec_tf.models import query_side
from qrec_tf.models.registry import build_model
from qrec_tf.optimizers import make_optimizer

BATCHES_PER_CALL = 8
KERAS_BATCH_NORM = "dice_keras_batch_norm"
MATMULS = "the step's matmuls, every position"
MATMULS_PACKED = "the step's matmuls, real positions"
SETTLE_SECONDS = 0.5


class Part:
    """A callable timed call by call: wall and process CPU seconds per batch of each call, which
    runs it `batches` times (`BATCHES_PER_CALL` for what reads an input pipeline)."""

    def __init__(self, name: str, call: Callable[[], object], batches: int = 1,
                 settle: bool = True):
        self.name, self.call, self.batches, self.settle = name, call, batches, settle
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(self.batches):
            self.call()
        self.wall.append((time.perf_counter() - wall) / self.batches)
        self.cpu.append((time.process_time() - cpu) / self.batches)
        if self.batches > 1 and self.settle:
            time.sleep(SETTLE_SECONDS)   # the pipeline's background refill, before the next part


def take_turns(parts: list[Part], calls: int, warmup: int = 1) -> None:
    """`warmup` untimed and `calls` timed calls of every part, the parts taking turns."""
    for _ in range(warmup):
        for part in parts:
            part.call()
    for _ in range(calls):
        for part in parts:
            part.run()


def batches(dataset: tf.data.Dataset) -> Callable[[], object]:
    """A call that takes the next batch of `dataset` (repeated) to the host."""
    iterator = iter(dataset.repeat())

    def call():
        return tf.nest.map_structure(lambda t: t.numpy(), next(iterator))

    return call


def din_feature_names(schema: S.Schema) -> list[str]:
    return [f.name for f in schema.group("user", "item", "history")]


def input_parts(data_dir: str, schema: S.Schema, model, batch: int, seed: int,
                shuffle_buffer: int) -> list[Part]:
    def records() -> tf.data.Dataset:
        return data._records(data_dir, "train", True, shuffle_buffer, seed)

    in_memory = tf.data.Dataset.from_tensor_slices(
        list(data._records(data_dir, "train", False, 1, seed).as_numpy_iterator()))
    in_memory = in_memory.shuffle(shuffle_buffer, seed=seed)
    real = data.make_dataset(data_dir, "train", batch, seed=seed, shuffle_buffer=shuffle_buffer,
                             num_epochs=None, supervised=True, schema=schema)
    din = data.make_dataset(data_dir, "train", batch, seed=seed, shuffle_buffer=shuffle_buffer,
                            num_epochs=None, supervised=True, schema=schema,
                            features=din_feature_names(schema))
    looked_up = din.map(lambda x, y: (model.index_features(x), y),
                        num_parallel_calls=tf.data.AUTOTUNE)
    n = BATCHES_PER_CALL
    return [Part("input: records (GZIP read, shuffle, batch)",
                 batches(records().batch(batch).prefetch(tf.data.AUTOTUNE)), n),
            Part("input: records_mem (no GZIP)",
                 batches(in_memory.batch(batch).prefetch(tf.data.AUTOTUNE)), n),
            Part("input: parse_all (every feature)", batches(real), n),
            Part("input: parse_din (din's features only)", batches(din), n),
            Part("input: parse_din + lookups in tf.data", batches(looked_up), n)]


def step_parts(model, x: dict, y: tf.Tensor) -> list[Part]:
    variables = model.trainable_variables
    attention = model.history_attention

    @tf.function
    def lookups():
        return model.index_features(x)

    @tf.function
    def forward():
        return model.compute_loss_terms(x, y, training=True)[0]["loss"]

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = model.compute_loss_terms(x, y, training=True)[0]["loss"]
        return tape.gradient(loss, variables)

    @tf.function
    def train_step():
        return model.train_step((x, y))["loss"]

    _, target, hist_idx, history = model.target_and_history(x)
    mask = hist_idx != 0

    @tf.function
    def attention_forward(training):
        return attention(target, history, mask, training=training)

    @tf.function
    def attention_forward_backward():
        with tf.GradientTape() as tape:
            tape.watch([target, history])
            out = attention(target, history, mask, training=True)
        return tape.gradient(out, [target, history, *attention.trainable_variables])

    mlp_in = tf.random.normal([target.shape[0], model.ctr_mlp.layers[0].kernel.shape[0]])

    @tf.function
    def mlp_forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(mlp_in)
            out = model.ctr_logits(mlp_in, training=True)
        return tape.gradient(out, [mlp_in, *model.ctr_mlp.trainable_variables,
                                   *model.ctr_logit.trainable_variables])

    @tf.function
    def embeddings():
        return model.target_and_history(x)[3]

    @tf.function
    def embedding_l2():
        return model.embedding_penalty(x, set(model.input_feature_names()))

    def run(fn, *args):
        # To the host, IndexedSlices gradients as their component tensors.
        return lambda: tf.nest.map_structure(lambda t: t.numpy() if t is not None else t,
                                             fn(*args), expand_composites=True)

    return [Part("step: lookups", run(lookups)),
            Part("step: forward", run(forward)),
            Part("step: forward + backward", run(forward_backward)),
            Part("step: train_step (+ optimizer, metrics)", run(train_step)),
            Part("layer: embedding gathers (target, history)", run(embeddings)),
            Part("layer: mini-batch aware L2", run(embedding_l2)),
            Part("layer: attention forward, training (Dice batch stats)",
                 run(attention_forward, True)),
            Part("layer: attention forward, inference (Dice moving stats)",
                 run(attention_forward, False)),
            Part("layer: attention forward + backward", run(attention_forward_backward)),
            Part("layer: CTR MLP forward + backward", run(mlp_forward_backward))]


def query_side_parts(model, x: dict) -> list[Part]:
    """QueryRec's query side, each piece forward + backward (the gradients of its inputs' and
    its own variables) on the batch's `encode_user` outputs: the distinct-query embedding, the
    search-clicked items' context, the SAS encoder, the query attention, the category match,
    NIP and the contrastive loss. None for a model without queries."""
    if not getattr(model, "uses_queries", False):
        return []
    cfg = model.config.din
    user = model.encode_user(x, training=True)
    item_idx, target, _, _ = model.target_and_history(x)
    word_idx = model.lookup(S.QUERY_WORD_IDS, x[S.QUERY_WORD_IDS])
    variables = model.trainable_variables

    def piece(fn, *watched):
        @tf.function
        def forward_backward():
            with tf.GradientTape() as tape:
                tape.watch(list(watched))
                out = tf.reduce_sum(tf.cast(fn(), tf.float32))
            return tape.gradient(out, [*watched, *variables])
        return lambda: tf.nest.map_structure(lambda t: t.numpy() if t is not None else t,
                                             forward_backward(), expand_composites=True)

    parts = [Part("query: whole encode_user", piece(
                 lambda: sum(tf.reduce_sum(v) for k, v in model.encode_user(x, True).items()
                             if k != "user" and v.dtype.is_floating))),
             Part("query: embed the query list", piece(
                 lambda: model.embed_queries(user["query_idx"], word_idx, True)))]
    if cfg.query_item_context:
        parts.append(Part("query: clicked items' and results' context", piece(
            lambda: query_side.clicked_items_context(model, user)
            + query_side.results_context(model, user))))
    if cfg.query_encoder:
        parts.append(Part("query: SAS encoder", piece(lambda: model.query_encoder(
            user["queries"], user["query_idx"] != 0, training=True), user["queries"])))
        if cfg.nip_weight:
            parts.append(Part("query: NIP loss", piece(
                lambda: model.run_task(model.tasks[0], x, user)[1], user["e_qt"])))
    if cfg.query_pooling:
        parts.append(Part("query: query attention", piece(lambda: model.pool_queries(
            user, item_idx, target, training=True), user["queries"], target)))
    if cfg.search_match:
        parts.append(Part("query: search match", piece(
            lambda: query_side.search_match_features(model, user, x, item_idx))))
    if cfg.contrastive_weight:
        parts.append(Part("query: contrastive loss", piece(lambda: model.run_task(
            model.tasks[-1], x, user)[1], user["query_text"])))
    return parts


def profile(data_dir: str, config_path: str, batch: int, calls: int) -> None:
    config = load_config(config_path, [f"train.batch_size={batch}"])
    tc = config.train
    schema = S.Schema.load(data_dir)
    model = build_model(config.model, data_dir)
    model.compile(optimizer=make_optimizer(tc.optimizer, tc.learning_rate))
    real = data.make_dataset(data_dir, "train", batch, seed=tc.seed, num_epochs=None,
                             shuffle_buffer=tc.shuffle_buffer, supervised=True, schema=schema)
    x, y = next(iter(data.make_dataset(data_dir, "train", batch, seed=tc.seed,
                                       shuffle_buffer=10_000, supervised=True, schema=schema)))
    x = {name: x[name] for name in model.input_feature_names()}
    model.train_step((x, y))   # builds the optimizer's variables (eagerly, once)
    model.make_train_function()
    fit_step = model.train_function
    every, only_read = iter(real), iter(data.make_dataset(
        data_dir, "train", batch, seed=tc.seed, num_epochs=None, shuffle_buffer=tc.shuffle_buffer,
        supervised=True, schema=schema, features=model.input_feature_names()))
    full = [Part("full step: fit's train function, input parsing every feature",
                 lambda: float(fit_step(every)["loss"]), BATCHES_PER_CALL),
            Part("full step: the same, input parsing the features the model reads",
                 lambda: float(fit_step(only_read)["loss"]), BATCHES_PER_CALL)]
    parts = [*input_parts(data_dir, schema, model, batch, tc.seed, tc.shuffle_buffer),
             *step_parts(model, x, y), *query_side_parts(model, x), *full]
    print(f"profiling {config.model.name} at batch {batch}: {calls} calls per part, the parts "
          f"taking turns ({BATCHES_PER_CALL} batches per call of an input or whole step) ...",
          flush=True)
    take_turns(parts, calls)
    matmul = step_flops.matmul_gflops()
    shape = step_flops.din_shape(config.model, schema, batch, step_flops.mean_history_length(
        x[S.HIST_ITEM_IDS].numpy(), S.PAD_ID))
    narrow = step_flops.matmul_gflops(batch * schema.history_length, shape.item_dim,
                                 shape.attention_units[0])
    flops = step_flops.din_step_flops(shape) / 1e9
    print(f"{'part':58s} {'wall ms':>8s} {'CPU ms':>8s}")
    for part in parts:
        print(f"{part.name:58s} {statistics.median(part.wall) * 1e3:8.1f} "
              f"{statistics.median(part.cpu) * 1e3:8.1f}")
    print(f"float32 matmul: {matmul:.1f} GFLOP/s at 1024 x 1024 x 1024; {narrow:.1f} GFLOP/s at "
          f"the attention's first layer's shape ({batch * schema.history_length} x "
          f"{shape.item_dim} x {shape.attention_units[0]})")
    for part in parts:
        if part.name.startswith(("step: train_step", "full step")):
            t = statistics.median(part.wall)
            print(f"{part.name}: {flops:.2f} GFLOP in {t * 1e3:.0f} ms = {flops / t:.1f} GFLOP/s, "
                  f"{flops / t / matmul:.0%} of the square matmul's")


def compare_variants(data_dir: str, config_path: str, batch: int, calls: int,
                     variants: dict[str, list[str]], full_history: bool = False) -> None:
    """A training step of each variant (config overrides, e.g. model.embedding_l2=0)
    against the config as it is ("as is"), in this one process: each variant's own model (the
    same seed, hence the same initial weights) and `train_step` on one parsed batch, the variants
    taking turns call by call (`calls` timed calls of BATCHES_PER_CALL steps each). Prints the
    wall and CPU ms per step and each one's ratio to "as is", and the largest difference of the
    loss of the first step and of the weights after it from "as is" (the math is the same when
    these are float rounding). The override KERAS_BATCH_NORM (not a config key) has every Dice
    layer normalise with Keras' BatchNormalization layer in training (Dice's former code);
    "config=PATH" makes a variant another config (its model's step against this one's).
    full_history: every history position of the batch made real (the worst case of a packed
    attention, whose work follows the real positions)."""
    import numpy as np

    schema = S.Schema.load(data_dir)
    x, y = next(iter(data.make_dataset(data_dir, "train", batch, seed=0, shuffle_buffer=10_000,
                                       supervised=True, schema=schema)))
    if full_history:
        x = with_full_history(x, schema)
    configs = {}
    for name, overrides in {"as is": [], **variants}.items():
        # "config=PATH" times another model's step (e.g. queryrec's against din's).
        path = next((o.split("=", 1)[1] for o in overrides if o.startswith("config=")),
                    config_path)
        # Every variant's config is read (and checked) before any model is built.
        configs[name] = load_config(path, [f"train.batch_size={batch}", *(
            o for o in overrides if o != KERAS_BATCH_NORM and not o.startswith("config="))])
    parts, first = [], {}
    for name, overrides in {"as is": [], **variants}.items():
        config = configs[name]
        tf.keras.utils.set_random_seed(config.train.seed)
        model = build_model(config.model, data_dir)
        if KERAS_BATCH_NORM in overrides:
            for layer in model._flatten_layers():
                if isinstance(layer, Dice):
                    layer.keras_batch_norm_in_training = True
        model.compile(optimizer=make_optimizer(config.train.optimizer,
                                               config.train.learning_rate))
        inputs = {n: x[n] for n in model.input_feature_names()}
        step = tf.function(lambda m=model, i=inputs: m.train_step((i, y))["loss"])
        first[name] = (float(step()), [v.numpy() for v in model.trainable_variables])
        parts.append(Part(name, lambda s=step: float(s()), BATCHES_PER_CALL, settle=False))
    din = load_config(config_path).model
    real = step_flops.mean_history_length(x[S.HIST_ITEM_IDS].numpy(), S.PAD_ID)
    for packed, label in ((True, MATMULS_PACKED), (False, MATMULS)):
        shape = step_flops.din_shape(din, schema, batch, real, packed=packed)
        parts.append(Part(label, step_matmuls(shape), BATCHES_PER_CALL, settle=False))
    print(f"the batch: {real:.1f} real history positions of {schema.history_length} per "
          "example", flush=True)
    print(f"{len(parts)} variants of {config_path} at batch {batch}, taking turns: {calls} "
          f"calls of {BATCHES_PER_CALL} train steps each ...", flush=True)
    take_turns(parts, calls)
    base_loss, base_weights = first["as is"]
    base_wall = statistics.median(parts[0].wall)
    base_cpu = statistics.median(parts[0].cpu)
    print(f"{'variant':40s} {'wall ms':>8s} {'CPU ms':>8s} {'wall x':>7s} {'CPU x':>7s} "
          f"{'loss diff':>9s} {'weight diff':>11s}")
    for part in parts:
        wall, cpu = statistics.median(part.wall), statistics.median(part.cpu)
        if part.name in (MATMULS, MATMULS_PACKED):
            print(f"{part.name:40s} {wall * 1e3:8.1f} {cpu * 1e3:8.1f} {base_wall / wall:7.2f} "
                  f"{base_cpu / cpu:7.2f}   (the FLOP-bound floor of a step at these shapes)")
            continue
        loss, weights = first[part.name]
        same_shapes = [w.shape for w in weights] == [w.shape for w in base_weights]
        diff = (max(float(np.abs(a - b).max()) for a, b in zip(weights, base_weights))
                if same_shapes else float("nan"))   # another model: nothing to compare
        print(f"{part.name:40s} {wall * 1e3:8.1f} {cpu * 1e3:8.1f} {base_wall / wall:7.2f} "
              f"{base_cpu / cpu:7.2f} {abs(loss - base_loss):9.1e} {diff:11.1e}")


def step_matmuls(shape: step_flops.DinShape) -> Callable[[], object]:
    """A call that runs the matmuls of one DIN training step at its shapes and nothing else:
    each forward Dense matmul of `step_flops.din_matmuls` ([rows, fan_in] x [fan_in, units]) and its
    two backward ones (the inputs' gradient dY W^T, the kernel's X^T dY), on random float32
    tensors (each output summed, so that none is pruned): about the floor of the step's time
    on this machine (its matmul FLOPs at the rate these shapes get), with no element-wise
    work."""
    tensors = [(tf.random.normal([rows, fan_in]), tf.random.normal([fan_in, units]),
                tf.random.normal([rows, units]))
               for rows, fan_in, units in step_flops.din_matmuls(shape)]

    @tf.function
    def run():
        total = tf.constant(0.0)
        for x, w, dy in tensors:
            total += (tf.reduce_sum(tf.matmul(x, w))
                      + tf.reduce_sum(tf.matmul(dy, w, transpose_b=True))
                      + tf.reduce_sum(tf.matmul(x, dy, transpose_a=True)))
        return total

    return lambda: float(run())


def with_full_history(x: dict, schema: S.Schema) -> dict:
    """The batch with every padded history position filled with the example's own target (its
    item, category, sub-category): ids the vocabularies know, so that every position is real."""
    filled = dict(x)
    for feature in schema.group("history"):
        target = x[peers.HISTORY_TARGETS[feature.name]]
        ids = x[feature.name]
        filled[feature.name] = tf.where(ids == S.PAD_ID, tf.cast(target, ids.dtype)[:, None], ids)
    return filled
