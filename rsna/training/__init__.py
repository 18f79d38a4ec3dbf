"""Everything that touches TensorFlow and Keras: the generators, the losses, the models,
the shared fold machinery, stage 1 (the slice model), the embeddings, stage 2 (the
series model), the strategy and the runner that knows both stages.

Importing this package imports nothing; its modules load TensorFlow.
"""

__all__: list[str] = []
