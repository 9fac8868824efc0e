"""The three LoFi stages and their glue: pre-training (ICP/ACP/ACP+), the LoFi stage, feature extraction, head
training + inference + evaluation. Each stage is a plain function with explicit arguments that writes its outputs
atomically into its own folder and leaves a ``done.json`` marker; ``run.py`` chains them and reuses finished ones.
"""
