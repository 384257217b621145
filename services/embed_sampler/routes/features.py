"""Routes (features)."""

from fastapi import APIRouter

router = APIRouter()
