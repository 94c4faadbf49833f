"""TD-MPC2: implicit world model with MPPI planning (Hansen et al., 2024)."""
