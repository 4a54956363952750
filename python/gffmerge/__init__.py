"""gffmerge: closed-form merging of fine-tuned GNN force fields."""
