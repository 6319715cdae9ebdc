"""Real corpora as released, one module each: ``prepare(corpus_dir, out_dir=None, **options)``.

lhotse's shape: a preparer is importable and testable without a recipe dir; ``egs/<corpus>/prepare.py``
only calls it.  It returns ``{name: DataDir}`` (and writes them under ``out_dir`` when given) with
the corpus' own labels and ids: stage 1 maps labels onto a recipe's label set, so the same
preparer serves every label set a paper uses.  What a preparer cannot use (missing audio, an entry
it cannot parse) goes to the dir's ``rejected`` with the reason, never dropped silently.

The facts each module relies on, and their sources, are in ``shared/corpora.md`` of the design
notes; a fact marked unconfirmed there is detected at run time, not hard-coded.
"""
