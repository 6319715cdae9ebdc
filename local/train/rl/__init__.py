"""Stage 8 policy optimisation: losses as pure tensor functions, rollouts, rewards."""
