"""Routes (generation)."""

from fastapi import APIRouter

router = APIRouter()
