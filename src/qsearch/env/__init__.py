"""The search environment: search space, policy evaluator, recorder and gymnasium envs."""
