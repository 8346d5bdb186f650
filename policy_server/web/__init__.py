"""The account owner's side: signed links in every notice ("It was me" / "It wasn't me")."""
