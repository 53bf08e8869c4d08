"""The institution's node: a Flower ClientApp that trains and evaluates locally."""
