"""A tiny SavedModel with the serving contract of our Gemma 3 export, for the serving tests.

serving_default: prompt string [B], images string [B, N] (default [1, 0]: none), and scalar
(any-rank) max_new_tokens / temperature / top_k / top_p / seed with defaults, returns
completion string [B] and num_tokens int32 [B]. Its answers are easy to compute in Python:
see expected_completion. An empty prompt raises InvalidArgumentError, as the real model does
for bad input. score and embed do simple arithmetic with a variable, so variables/ exists.
"""

import os
import shutil
import socket

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_RECORDS = 3


def free_port() -> int:
    """A port nothing listens on now, for a server started as its own process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
EMPTY_PROMPT_MESSAGE = "prompt must not be empty"


def expected_completion(prompt: str, images=(), max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0,
                        seed=0, tag="v1") -> str:
    images = [i for i in images if i]
    return (f"{prompt[::-1]}|{max_new_tokens}|{len(images)}:{sum(len(i) for i in images)}"
            f"|t={temperature:.2f}|k={top_k}|p={top_p:.2f}|s={seed}|{tag}")


def expected_embedding(prompt: str, scale=1.0) -> list[float]:
    n = len(prompt)
    return [scale * n, scale * 2 * n, scale, 0.0]


class ToyModel(tf.Module):
    def __init__(self, tag: str, scale: float):
        super().__init__()
        self.tag = tag
        self.scale = tf.Variable(scale, dtype=tf.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="prompt"),
        tf.TensorSpec([None, None], tf.string, name="images"),
        tf.TensorSpec(None, tf.int32, name="max_new_tokens"),
        tf.TensorSpec(None, tf.float32, name="temperature"),
        tf.TensorSpec(None, tf.int32, name="top_k"),
        tf.TensorSpec(None, tf.float32, name="top_p"),
        tf.TensorSpec(None, tf.int32, name="seed"),
    ])
    def generate(self, prompt, images=tf.zeros([1, 0], tf.string), max_new_tokens=tf.constant(16),
                 temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
                 seed=tf.constant(0)):
        tf.debugging.assert_greater(tf.strings.length(prompt), 0, message=EMPTY_PROMPT_MESSAGE)
        batch = tf.shape(prompt)[0]
        # Scalars and [1, N] images apply to every row, as in the real model.
        per_row = lambda x: tf.broadcast_to(x, [batch])  # noqa: E731
        images = tf.broadcast_to(images, [batch, tf.shape(images)[1]])
        sizes = tf.strings.length(images)
        reversed_prompt = tf.map_fn(
            lambda s: tf.strings.reduce_join(tf.reverse(tf.strings.unicode_split(s, "UTF-8"), [0])),
            prompt, fn_output_signature=tf.string)
        completion = tf.strings.join([
            reversed_prompt, "|", tf.strings.as_string(per_row(max_new_tokens)),
            "|", tf.strings.as_string(tf.reduce_sum(tf.cast(sizes > 0, tf.int32), axis=1)),
            ":", tf.strings.as_string(tf.reduce_sum(sizes, axis=1)),
            "|t=", tf.strings.as_string(per_row(temperature), precision=2),
            "|k=", tf.strings.as_string(per_row(top_k)),
            "|p=", tf.strings.as_string(per_row(top_p), precision=2),
            "|s=", tf.strings.as_string(per_row(seed)), "|" + self.tag])
        return {"completion": completion, "num_tokens": tf.strings.length(prompt, unit="UTF8_CHAR")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt"),
                                  tf.TensorSpec([None], tf.string, name="response")])
    def score(self, prompt, response):
        lengths = tf.cast(tf.strings.length(prompt) + tf.strings.length(response), tf.float32)
        return {"log_likelihood": -0.5 * self.scale * lengths,
                "num_tokens": tf.strings.length(response, unit="UTF8_CHAR")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    def embed(self, prompt):
        n = tf.cast(tf.strings.length(prompt, unit="UTF8_CHAR"), tf.float32)
        ones = tf.ones_like(n)
        return {"embedding": self.scale * tf.stack([n, 2 * n, ones, 0 * ones], axis=1)}


def _warmup_log(signature_name: str, **inputs) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.model_spec.signature_name = signature_name
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value, dtype=tf.string if alias == "images" else None))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


class KerasVariablesModel(tf.Module):
    """The mistake our export once made: a tf.Module tracking Keras 3 variables. `tf.saved_model.load`
    runs it (it rebinds captures through the object graph); TF Serving's session loader restores
    copies of the variables that its function never reads ("Could not find variable")."""

    def __init__(self):
        super().__init__()
        import keras

        self.dense = keras.layers.Dense(4)
        self.dense.build((None, 1))
        self.tracked = list(self.dense.variables)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompt")])
    def embed(self, prompt):
        return {"embedding": self.dense(tf.cast(tf.strings.length(prompt), tf.float32)[:, None])}


def write_toy_model(base_path: str, version: int, tag: str = "v1", scale: float = 1.0,
                    keras_variables: bool = False) -> str:
    """Saves version `version` under base_path, appearing at once (built aside, then renamed).
    `keras_variables`: a model that only the Python object loader runs (see KerasVariablesModel)."""
    os.makedirs(base_path, exist_ok=True)
    final = os.path.join(base_path, str(version))
    staging = os.path.join(base_path, f".staging-{version}")
    shutil.rmtree(staging, ignore_errors=True)
    if keras_variables:
        model = KerasVariablesModel()
        signatures, warmup = {"embed": model.embed}, [_warmup_log("embed", prompt=["warm"])]
    else:
        model = ToyModel(tag, scale)
        signatures = {"serving_default": model.generate, "score": model.score, "embed": model.embed}
        # Every input per row, as TF Serving's batching needs (it replays warmup records through it).
        warmup = [_warmup_log("serving_default", prompt=["warm up"], images=[[]], max_new_tokens=[16],
                              temperature=[0.0], top_k=[0], top_p=[1.0], seed=[0]),
                  _warmup_log("score", prompt=["a"], response=["b"]),
                  _warmup_log("embed", prompt=["warm"])]
    tf.saved_model.save(model, staging, signatures=signatures)
    os.makedirs(os.path.join(staging, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(staging, "assets.extra", "tf_serving_warmup_requests")) as writer:
        for record in warmup:
            writer.write(record.SerializeToString())
    os.rename(staging, final)
    return final
