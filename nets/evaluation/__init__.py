"""Evaluating generated digits: the MNIST classifier whose features the metrics use
(``classifier``), the metrics as pure functions (``metrics``), the protocol that applies them
to samples and real digits (``protocol``), the bits/dim bound (``nll``), the samples file
(``samples``) and the printed tables (``report``). The commands are ``nets/evaluate.py`` and
``nets/train_classifier.py``;
``scoring`` is what both ``nets.evaluate`` and ``nets.Pipeline.evaluate`` call.
"""
