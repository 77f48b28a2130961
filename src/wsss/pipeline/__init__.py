"""Running recipes: the schema assembled from the registered methods, the stage runner, the demo."""
