"""The predictive distribution: draws of a head, methods (MC dropout, Laplace, ensembles), temperature."""
