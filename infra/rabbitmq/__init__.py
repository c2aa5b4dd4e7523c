"""The broker's side of the deployment: definitions rendered from the contract, and its config."""
