"""Reference for bench/embed.rs: the same model.onnx through onnxruntime's Python API,
same thread count, same tokenizer, batches padded to their longest item, CLS pooling +
L2 normalization. Prints sentences per second.

Usage: ort_reference.py MODEL_DIR THREADS SECONDS < sentences (one per line)
"""
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sentences = [l.rstrip("\n") for l in sys.stdin if l.strip()]
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
sess = ort.InferenceSession(f"{model_dir}/model.onnx", opts, providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(512)
names = {i.name for i in sess.get_inputs()}


def batch(texts):
    enc = tok.encode_batch(texts)
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for r, e in enumerate(enc):
        ids[r, : len(e.ids)] = e.ids
        mask[r, : len(e.ids)] = 1
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        feed["token_type_ids"] = np.zeros_like(ids)
    out = sess.run(None, feed)[0][:, 0, :]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


batch(sentences)  # warm-up
done, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < seconds:
    batch(sentences)
    done += len(sentences)
print(f"{done / (time.perf_counter() - t0):.2f}")
