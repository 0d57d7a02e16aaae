"""Use cases, apart from the core and its fronts: the predictive-maintenance use case (its data, federation and report) and the demo."""
