"""llmbook: the small, tested helper package behind the executable textbook on large language models.

One module per topic a chapter teaches:

- :mod:`llmbook.runtime`     the scale switch, device choice, seeding, mixed precision, environment report
- :mod:`llmbook.data`        the shipped data sets, checksum-verified, with fixed splits
- :mod:`llmbook.pretrained`  which pretrained checkpoint to load (hub, or the bundled one offline)
- :mod:`llmbook.embed`       sentence embeddings: masked mean pooling, cosine similarity
- :mod:`llmbook.viz`         the book's matplotlib style, training curves and heatmaps
- :mod:`llmbook.diagrams`    block diagrams: the Transformer, one attention head, multi-head, masks (chapters 1-3)
- :mod:`llmbook.notebooks`   executing, stamping and checking the book's notebooks
- :mod:`llmbook.arch`        parameter, FLOP and memory counting; roofline and timing helpers (chapter 1)
- :mod:`llmbook.attention`   scaled dot-product and multi-head attention (chapter 2)
- :mod:`llmbook.transformer` the encoder-decoder Transformer, greedy and beam search, the trained translator (chapters 3, 7)
- :mod:`llmbook.gpt`         a decoder-only GPT, sampling, the KV cache, checkpoints, GPT-2 weights (chapter 4)
- :mod:`llmbook.bert`        BERT from scratch that loads real checkpoints; MLM/NSP pretraining, a bigram baseline (chapter 5)
- :mod:`llmbook.train`       the book's transparent training loop (chapter 6)
- :mod:`llmbook.textclf`     text-classification data, dynamic padding, the TF-IDF baseline, the classifier checkpoint (chapters 6-7)
- :mod:`llmbook.metrics`     perplexity, classification metrics, BLEU, chrF, ROUGE, bootstrap (chapter 7)
- :mod:`llmbook.lora`        LoRA and adapters from scratch, merged back for serving (PEFT chapter)
- :mod:`llmbook.parallel`    memory meters, checkpointing, tensor/pipeline parallelism (training at scale)
- :mod:`llmbook.dist_train`  the DDP/FSDP training script run with torchrun (training at scale)
- :mod:`llmbook.retrieval`   exact embedding search, nearest centroids, contrastive fine-tuning (customer service)
- :mod:`llmbook.assistant`   temperature scaling, handoff thresholds, the customer-service assistant (customer service)
- :mod:`llmbook.monitor`     sentiment index per topic, z-score and CUSUM alerts, a stream simulator (finance monitoring)
- :mod:`llmbook.dapt`        domain-adaptive MLM pretraining with the book's loop (finance monitoring)
- :mod:`llmbook.recsys`      implicit feedback, per-user splits, CF/BPR baselines, two towers, cross-encoder (recommendation)
- :mod:`llmbook.compress`    pruning, head pruning, int8 quantisation, ONNX Runtime, distillation, timing (deployment)
- :mod:`llmbook.serve`       the secured FastAPI service, micro-batcher, PII masking, load tester (deployment)
- :mod:`llmbook.serve_ray`   the same model as a Ray Serve deployment with autoscaling (deployment)
- :mod:`llmbook.robust`      word-substitution attack, FGM adversarial training, augmenters, focal loss (robustness)
- :mod:`llmbook.checks`      the argument checks every module shares (clear one-line errors)

Importing ``llmbook`` itself is cheap; import the module you need.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmbook")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
