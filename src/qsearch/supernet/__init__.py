"""A weight-sharing multi-bit supernet: trained once (``qsearch supernet``), it scores any
policy of the search space with no retraining (``evaluator=supernet``)."""
