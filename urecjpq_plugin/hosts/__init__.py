"""Host adapters (RecBole, MMRec); each imports its framework lazily."""
